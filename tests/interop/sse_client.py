"""A browser-grade SSE client against a running grainstore: subscribe to a flow's
grains with httpx-sse, disconnect half-way while a writer goes on writing, reconnect
with Last-Event-ID as EventSource does, and check that the grains arrive exactly once
each and in order, and that every connection starts with the server's `retry`.

Usage: sse_client.py BASE_URL   (e.g. http://127.0.0.1:8080)
"""

import base64
import json
import sys
import threading
import time
import uuid

import httpx
from httpx_sse import connect_sse

GRAINS = 200
FIRST_READ = 40
RETRY_MS = 1000  # config/default.toml, live.retry_ms


def timestamp(n):
    """The n-th grain's origin timestamp: 25 grains a second from 1420102800:0."""
    return f"{1420102800 + n // 25}:{(n % 25) * 40_000_000}"


def number(text):
    """The n of the grain at timestamp `text`."""
    sec, nsec = text.split(":")
    return (int(sec) - 1420102800) * 25 + int(nsec) // 40_000_000


def grain_line(flow, source, n):
    meta = {
        "@_ns": "urn:x-ipstudio:ns:0.1",
        "grain": {
            "grain_type": "event",
            "source_id": source,
            "flow_id": flow,
            "origin_timestamp": timestamp(n),
            "sync_timestamp": timestamp(n),
            "rate": {"numerator": 25, "denominator": 1},
            "duration": {"numerator": 1, "denominator": 25},
            "event_payload": {
                "type": "urn:x-ipstudio:format:event.param.change",
                "topic": f"/grain/{n}",
                "data": [{"path": "n", "pre": n - 1, "post": n}],
            },
        },
    }
    return json.dumps({"meta": meta})


def write(client, flow, source, first, end, pause):
    """Posts grains first..end in small batches."""
    for start in range(first, end, 4):
        body = "\n".join(grain_line(flow, source, n) for n in range(start, min(start + 4, end)))
        response = client.post(
            f"/flows/{flow}/grains",
            content=body + "\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert response.status_code == 201, (response.status_code, response.text)
        time.sleep(pause)


def read_grains(events, count, last_timestamp):
    """Reads grain events until `count` were read or the grain at `last_timestamp`
    arrived; checks the first event carries `retry`. Returns their ids."""
    ids = []
    first = True
    for sse in events.iter_sse():
        if first:
            assert sse.retry == RETRY_MS, f"the stream starts with retry: {sse}"
            first = False
        if sse.event != "grain":
            # The greeting (retry and a comment) and keep-alives, which httpx-sse
            # dispatches with the last id and no data.
            assert sse.event in ("", "message") and sse.data == "", sse
            continue
        grain = json.loads(sse.data)
        meta = grain["meta"]["grain"]
        assert meta["origin_timestamp"] == sse.id, (sse.id, meta)
        payload = json.loads(base64.b64decode(grain["data"]))
        assert payload["topic"] == f"/grain/{number(sse.id)}", (sse.id, payload)
        ids.append(sse.id)
        if len(ids) == count or sse.id == last_timestamp:
            return ids
    raise AssertionError(f"the stream ended after {len(ids)} grains")


def main():
    base = sys.argv[1]
    flow, source = str(uuid.uuid4()), str(uuid.uuid4())
    with httpx.Client(base_url=base, timeout=httpx.Timeout(30.0)) as client:
        response = client.put(
            f"/flows/{flow}",
            json={"source_id": source, "format": "urn:x-nmos:format:data", "label": "sse"},
        )
        assert response.status_code == 201, response.text
        # Stored before the subscription: live from now skips them.
        write(client, flow, source, 0, 8, 0)

        writer = threading.Thread(
            target=write, args=(client, flow, source, 8, 8 + GRAINS, 0.005), daemon=True
        )
        last = timestamp(8 + GRAINS - 1)
        with connect_sse(client, "GET", f"/flows/{flow}/grains") as events:
            assert events.response.status_code == 200
            assert events.response.headers["content-type"].startswith("text/event-stream")
            assert events.response.headers["cache-control"] == "no-cache"
            # Subscribed (headers in): start writing.
            writer.start()
            got = read_grains(events, FIRST_READ, last)
        # Disconnected; the writer goes on. Reconnect as EventSource does.
        time.sleep(0.2)
        with connect_sse(
            client, "GET", f"/flows/{flow}/grains", headers={"last-event-id": got[-1]}
        ) as events:
            got += read_grains(events, GRAINS + 1, last)
        writer.join()

    want = [timestamp(n) for n in range(8, 8 + GRAINS)]
    assert got == want, f"missed {sorted(set(want) - set(got))[:5]}, len {len(got)} vs {len(want)}"
    print(f"sse client ok: {len(got)} grains over two connections, resumed after {FIRST_READ}")


if __name__ == "__main__":
    main()
