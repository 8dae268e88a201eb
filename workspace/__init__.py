"""Where user data lives (the data folder) and how files are written safely."""
