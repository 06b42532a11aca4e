"""Ask a vidrip endpoint about a video with the `openai` client (any OpenAI-compatible client works the same).

    python serve_apps/client.py --base-url http://127.0.0.1:8000/v1 --api-key KEY \
        --model vidrip-video --video work/sample/test/case.mp4 --question "What is the diagnosis?"

The video travels as a ``data:`` URL (base64) in a ``video_url`` content part; ``--media-path`` sends a
path under the server's media root instead, and ``--stream`` prints the answer as it is generated.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

import openai


def video_part(video: str | None, media_path: str | None) -> dict:
    if media_path:
        return {"type": "video_url", "video_url": {"url": media_path}}
    data = base64.b64encode(Path(video).read_bytes()).decode()
    return {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default=os.environ.get("VIDRIP_API_KEY", "none"))
    p.add_argument("--model", default="vidrip-base", help="the base model or an adapter's name (GET /v1/models)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="a video file on this machine (sent as a data: URL)")
    source.add_argument("--media-path", help="a path under the server's media root")
    p.add_argument("--question", default="Describe the tissue and give a diagnosis.")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--stream", action="store_true")
    args = p.parse_args(argv)

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    messages = [
        {"role": "user", "content": [video_part(args.video, args.media_path), {"type": "text", "text": args.question}]}
    ]
    if args.stream:
        for chunk in client.chat.completions.create(
            model=args.model, messages=messages, max_tokens=args.max_tokens, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        return 0
    reply = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens)
    print(reply.choices[0].message.content)
    print(f"[{reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
