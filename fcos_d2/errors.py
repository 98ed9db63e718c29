"""The error raised for bad user input (files, config keys, datasets, checkpoints)."""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from the user; the message names the file, key, image or box at fault."""
