# A WebSocket echo server for the benchmarks (bench/ws_idle.sh, bench/ws_roundtrip.sh),
# standard library only: the RFC 6455 handshake, then each frame's payload echoed back
# unmasked (small frames are all the benchmarks send). Usage: python3 ws_echo.py PORT
import asyncio, base64, hashlib, sys
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
async def serve(r, w):
    try:
        head = await r.readuntil(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            b0, b1 = await r.readexactly(2)
            n = b1 & 0x7f
            if n == 126:
                n = int.from_bytes(await r.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await r.readexactly(8), "big")
            mask = await r.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(await r.readexactly(n)))
            if b0 & 0x0f == 8:
                w.write(bytes([0x88, len(data)]) + data)
                await w.drain()
                break
            w.write(bytes([0x80 | (b0 & 0x0f), len(data)]) + data)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        w.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
