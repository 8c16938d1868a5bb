"""`analysis.collect.search_all` pauses the garbage collector while MLflow builds run objects, and always resumes it."""

import gc

import pytest

from noharm.analysis.collect import search_all


class Pages:
    """A stand-in MLflow client serving fixed pages (records whether the collector ran meanwhile)."""

    def __init__(self, pages, fail_at=None):
        self.pages, self.fail_at, self.gc_during = pages, fail_at, []

    def search_runs(self, ids, filter_string, run_view_type, max_results, page_token):
        i = int(page_token or 0)
        self.gc_during.append(gc.isenabled())
        if i == self.fail_at:
            raise RuntimeError("store went away")
        page = _Page(self.pages[i])
        page.token = str(i + 1) if i + 1 < len(self.pages) else None
        return page


class _Page(list):
    token = None


def test_every_page_is_read_with_the_collector_paused():
    client = Pages([[1, 2], [3]])
    assert gc.isenabled()
    assert search_all(client, "0") == [1, 2, 3]
    assert client.gc_during == [False, False] and gc.isenabled()


def test_the_collector_resumes_after_an_error():
    client = Pages([[1], [2]], fail_at=1)
    with pytest.raises(RuntimeError, match="store went away"):
        search_all(client, "0")
    assert gc.isenabled()
