"""What the user configured: the models.yaml schema, loading it with errors that say where, and the paths we use.

The lowest wing: it imports no other wing.
"""
