"""A TCP echo service on the replicated netstack: every byte a client sends comes back.

Run it inside a network namespace that has a multi-queue TUN device (the
kernel's side of it at 192.0.2.1/24), one queue per replica::

    dominoes run examples.tcp_echo:service --replicas 2 --tun dn0 --addr 192.0.2.2/24 --port 7

The echo is a component bound to the stack's connection events, so it is
replicated with the connections: each replica applies every segment, and the
replica that owns an entry sends the echoed data.  A client keeps its
connection when the replica that accepted it dies.
"""

from __future__ import annotations

from dominoes.components.netstack import Tcp, start

from dominoes import Component, Context, Option, Service, on


class Echo(Component):
    """Sends back what arrives, and closes when the client has closed."""

    name = "echo"

    def __init__(self) -> None:
        #: bytes echoed, over every connection
        self.echoed = 0

    @on(Tcp.data)
    def echo(self, ctx: Context, key: int, data: bytes) -> None:
        tcp = ctx.component(Tcp)
        self.echoed += len(data)
        tcp.consumed(ctx, key, len(data))
        tcp.send(ctx, key, data)

    @on(Tcp.remote_closed)
    def done(self, ctx: Context, key: int) -> None:
        ctx.component(Tcp).close(ctx, key)


service = Service(
    "tcp_echo",
    [Tcp(), Echo()],
    on_start=start,
    serves=lambda options, host, port: f"{options['addr']} port {port} (TUN {options['tun']})",
    options=[
        Option("tun", help="the TUN device (multi-queue) to open a queue of", required=True),
        Option(
            "addr", help="the stack's IPv4 address and prefix, e.g. 192.0.2.2/24", required=True
        ),
    ],
)
