"""Selection: strategies that choose the next images from the candidate pool."""
