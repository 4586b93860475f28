"""Data formats, the corpus model and the data sets the stages read."""
