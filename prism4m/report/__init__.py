"""Looking at a dataset root: status tables and the HTML report."""
