"""What the results say: metrics, the predictions format, collection, tables, plots, leaderboard."""
