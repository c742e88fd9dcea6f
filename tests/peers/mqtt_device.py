#!/usr/bin/env python3
"""A field device that speaks MQTT, for the gateway's end-to-end tests.

Written with paho-mqtt (an independent MQTT implementation). It connects to
the broker with a last will (`offline`, retained, on --status-topic),
announces `online` (retained), then publishes what the test writes on stdin,
one JSON object per line:

    {"topic": "fence/north/state", "payload": "{\"voltage\": 82}", "qos": 1}
    {"topic": "x", "payload_hex": "00ff", "qos": 0}      # raw bytes

It prints `ready` once connected and subscribed, `sent N` after each publish
is acknowledged, and `got TOPIC PAYLOAD` for every message on --subscribe.
Killing the process (SIGKILL) makes the broker publish the last will.
"""
import argparse
import json
import sys
import threading

import paho.mqtt.client as mqtt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--status-topic")
    ap.add_argument("--subscribe")
    ap.add_argument("--username")
    ap.add_argument("--password")
    args = ap.parse_args()

    ready = threading.Event()
    out = threading.Lock()

    def say(line):
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id)
    if args.username:
        c.username_pw_set(args.username, args.password)
    if args.status_topic:
        c.will_set(args.status_topic, "offline", qos=1, retain=True)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            say(f"refused {reason_code}")
            return
        if args.status_topic:
            client.publish(args.status_topic, "online", qos=1, retain=True)
        if args.subscribe:
            client.subscribe(args.subscribe, qos=1)
        else:
            ready.set()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        ready.set()

    def on_message(client, userdata, msg):
        say(f"got {msg.topic} {msg.payload.decode('utf-8', 'replace')}")

    def on_publish(client, userdata, mid, reason_code, properties):
        say(f"sent {mid}")

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.on_publish = on_publish
    c.connect("127.0.0.1", args.port, keepalive=5)
    c.loop_start()
    if not ready.wait(10):
        say("timeout")
        sys.exit(1)
    say("ready")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        m = json.loads(line)
        payload = bytes.fromhex(m["payload_hex"]) if "payload_hex" in m else m["payload"].encode()
        c.publish(m["topic"], payload, qos=m.get("qos", 1), retain=m.get("retain", False))
    # stdin closed: leave cleanly (no last will).
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    main()
