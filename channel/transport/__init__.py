"""The channel's transport layer: the protocol layer (`channel.protocol`) put on real I/O.

Imports only `channel.protocol`. Client side: `calls` (what every client shares), `shm_client`
(shared memory, blocking and trio), `socket_client` (the same over the socket alone).
Server side: `shm_server` (shared-memory channels and the poller of all), `socket_server`,
`server_api` (what both server channels share), `serve` (one accepted connection, handshake
and channel, over either transport). Both: `handshake_io` (the handshake on sockets),
`doorbell` (eventfds and waiting), `regions`, `descriptors` (the descriptor budget) and
`stats` (reading a region's counters from outside).
"""
