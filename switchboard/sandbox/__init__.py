"""Each paid user's isolated runtime for the assistant's tools: one interface, several backends
(bubblewrap, Docker, a development-only subprocess), workspaces with a quota, the tools, and
the gateway tokens of runs. See docs/sandbox.md."""
