"""Example FAISSx plugin package: exact cosine similarity as an index type of its own."""
