"""Site-to-site federation: the hybrid logical clock, and a client site's link to its
master (pull, push, and the master's changes coming down). The master's side is the
``site`` JSON-RPC methods (:mod:`iceprod_server.rpc.site`)."""
