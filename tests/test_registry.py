import pytest

from noharm.registry import Registry, UnknownNameError


def test_register_get_and_unknown_lists_choices():
    reg = Registry("widget", entry_point_group="noharm.test-none")

    @reg.register("b")
    class B:
        pass

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and A.name == "a"
    assert reg.names() == ["a", "b"] and "b" in reg
    with pytest.raises(UnknownNameError) as err:
        reg.get("c")
    assert str(err.value) == "unknown widget 'c'; choose one of: a, b"


def test_registering_a_different_object_twice_fails():
    reg = Registry("widget", entry_point_group="noharm.test-none")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(type("Other", (), {}))
