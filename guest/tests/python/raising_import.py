"""A broken adapter: importing it raises (the server must stay up and report why)."""

raise ImportError("this adapter is deliberately broken")
