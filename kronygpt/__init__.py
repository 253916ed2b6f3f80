"""KronyGPT's library: what the commands at the top of the repo share. The map of its modules is the README's
Layout table (tests/test_layout.py keeps the two in step)."""
