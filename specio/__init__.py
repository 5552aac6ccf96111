"""Spec I/O: reading spec files and their build contexts from disk, and the request that carries
them to a server (the files a spec names, by content). Beside `hashing/`, which is pure."""
