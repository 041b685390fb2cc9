"""Command-line tools that are not training, evaluation or inference."""
