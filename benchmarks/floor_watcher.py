"""The least an operator can do for a new job, as a floor for load_operator.py --floor.

    python benchmarks/floor_watcher.py API_URL

Watches every CompressionJob of the API stand-in and, for each one added without a phase,
merge-patches its status to `{"phase": "Pending"}`, up to 64 patches at once: no kopf, no
validation, no Events. Whatever latency this gets is the harness's own (the stand-in and
the load sharing the machine), not an operator's.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

JOBS = "/apis/modelpress.io/v1alpha1/compressionjobs"
STATUS = "/apis/modelpress.io/v1alpha1/namespaces/{namespace}/compressionjobs/{name}/status"
CONCURRENT_PATCHES = 64


async def main(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        room = asyncio.Semaphore(CONCURRENT_PATCHES)
        pending: set[asyncio.Task[None]] = set()

        async def give_phase(metadata: dict[str, str]) -> None:
            async with room, session.patch(
                    url + STATUS.format(**metadata), data=json.dumps(
                        {"status": {"phase": "Pending"}}),
                    headers={"Content-Type": "application/merge-patch+json"}) as answer:
                await answer.read()

        async with session.get(url + JOBS, params={"watch": "true"},
                               timeout=aiohttp.ClientTimeout(total=None)) as stream:
            async for line in stream.content:
                event = json.loads(line)
                job = event["object"]
                if event["type"] == "ADDED" and not (job.get("status") or {}).get("phase"):
                    metadata = {key: job["metadata"][key] for key in ("namespace", "name")}
                    task = asyncio.create_task(give_phase(metadata))
                    pending.add(task)
                    task.add_done_callback(pending.discard)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
