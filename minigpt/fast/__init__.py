"""The fast versions of the layers of minigpt.nn."""
