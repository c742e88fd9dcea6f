#!/usr/bin/python3
"""RTSP test camera: GStreamer's gst-rtsp-server serving an H.264 test
pattern (videotestsrc ! x264enc ! rtph264pay) on 127.0.0.1.

Run with the system python (/usr/bin/python3): it needs python3-gi and
gir1.2-gst-rtsp-server-1.0. Prints "READY <port>" once it listens.

  rtsp_server.py --port 8554 [--user u --password p] [--width 640 --height 480]
                 [--fps 15] [--bitrate-kbps 500] [--keyint 15] [--mounts 1]

Mounts: /cam0 … /cam{N-1}. Each client shares one encoder per mount.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--bitrate-kbps", type=int, default=500)
    ap.add_argument("--keyint", type=int, default=15)
    ap.add_argument("--mounts", type=int, default=1)
    ap.add_argument("--pattern", default="smpte")
    a = ap.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    mounts = server.get_mount_points()
    launch = (
        f"( videotestsrc is-live=true pattern={a.pattern} "
        f"! video/x-raw,width={a.width},height={a.height},framerate={a.fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast bitrate={a.bitrate_kbps} "
        f"key-int-max={a.keyint} "
        f"! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    for i in range(a.mounts):
        f = GstRtspServer.RTSPMediaFactory()
        f.set_launch(launch)
        f.set_shared(True)
        if a.user:
            f.add_role_from_structure(
                Gst.Structure.from_string(
                    "user, media.factory.access=(boolean)true, "
                    "media.factory.construct=(boolean)true"
                )[0]
            )
        mounts.add_factory(f"/cam{i}", f)
    if a.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        basic = GstRtspServer.RTSPAuth.make_basic(a.user, a.password or "")
        auth.add_basic(basic, token)
        server.set_auth(auth)
    if server.attach(None) == 0:
        print(f"cannot listen on {a.port}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"READY {a.port}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
