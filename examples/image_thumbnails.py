"""Thumbnails for a batch of images: a map step.

    list_images ──▶ thumbnail (map: one task per image) ──▶ publish_gallery

``thumbnail`` is declared with ``map=True``: tideflow creates one task per element of the list
``list_images`` returns, runs them in parallel (each retried on its own if it fails), and hands
``publish_gallery`` the list of results in the original order. An empty list completes the map
step at once with ``[]``. A root step can be a map step too; it then maps over the run input.

Run it:                  python examples/image_thumbnails.py [DATABASE_URL]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tideflow import App, Flow, RunRecord, step

THUMBNAIL_WIDTH = 160


class ImageThumbnails(Flow, slug="image_thumbnails"):
    @step()
    def list_images(self, input: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            img
            for img in input["images"]
            if img["name"].lower().endswith((".jpg", ".jpeg", ".png"))
        ]

    @step(depends_on=["list_images"], map=True)
    async def thumbnail(self, item: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.15)  # stands in for downloading and resizing the image
        scale = THUMBNAIL_WIDTH / item["width"]
        stem = item["name"].rsplit(".", 1)[0]
        return {
            "name": f"{stem}.thumb.jpg",
            "width": THUMBNAIL_WIDTH,
            "height": max(1, round(item["height"] * scale)),
        }

    @step(depends_on=["thumbnail"])
    def publish_gallery(self, thumbnail: list[dict[str, Any]]) -> dict[str, Any]:
        return {"count": len(thumbnail), "files": [t["name"] for t in thumbnail]}


IMAGES = {
    "images": [
        {"name": "beach.jpg", "width": 4000, "height": 3000},
        {"name": "harbour.png", "width": 1920, "height": 1080},
        {"name": "notes.txt", "width": 0, "height": 0},
        {"name": "lighthouse.jpeg", "width": 3000, "height": 4000},
        {"name": "sunset.jpg", "width": 6000, "height": 4000},
        {"name": "tide-pool.png", "width": 1200, "height": 1200},
    ]
}


def main(database_url: str | None = None) -> list[RunRecord]:
    with App(database_url, flows=[ImageThumbnails]) as app:
        run_id = app.start_flow(ImageThumbnails, IMAGES)
        app.run_worker(until_idle=True)
        run = app.get_run(run_id)
    thumbs = run.step("thumbnail")
    print(
        f"run {run.run_id}: {run.status} in {run.duration:.2f}s; "
        f"{len(thumbs.tasks)} thumbnail tasks ran in parallel"
    )
    print(f"  gallery: {run.output['publish_gallery']}")
    return [run]


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
