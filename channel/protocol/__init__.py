"""The channel's sans-I/O protocol layer: what both ends agree on, as bytes and state.

No sockets, no waiting, nothing of the rest of the project: `limits` (every limit, once),
`errors`, `opcodes` (the operations and their body layouts), `codec` (command and completion
headers and bodies), `layout` (the shared region), `ring` (the SPSC rings), `sides` (each
end's state machine over a region), `handshake` (the setup messages and their framing) and
`frames` (commands and completions framed over a socket). Tests drive it with plain bytes.
"""
