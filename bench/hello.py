"""The baseline: a bare Tornado hello-world handler, as in Tornado's own documentation.

It answers GET and POST (the load generator sends the same JSON-RPC body to both servers,
so that request sizes and parsing costs are the same) with a fixed text body.
"""

from __future__ import annotations

import argparse
import asyncio

import tornado.web


class MainHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("Hello, world")

    def post(self) -> None:
        self.write("Hello, world")


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/", MainHandler)])
    app.listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare Tornado hello-world server")
    parser.add_argument("--port", type=int, required=True)
    try:
        asyncio.run(main(parser.parse_args().port))
    except KeyboardInterrupt:
        pass
