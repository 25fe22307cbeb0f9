"""Reads every message of a queue with a real Python client (kombu or pika) and prints them as JSON.

Usage: read_queue.py kombu|pika AMQP_URL QUEUE
Messages are fetched without acknowledgement and go back to the queue when the connection closes,
so both clients can read the same messages. A header table either client cannot decode fails here,
with the client's own exception, as it would in a Celery worker.
"""
import base64
import datetime
import decimal
import json
import sys


def plain(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {"timestamp": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def with_kombu(url, queue):
    import kombu

    out = []
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        while True:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                break
            properties = message.properties
            out.append({
                "headers": plain(properties.get("application_headers") or {}),
                "message_id": properties.get("message_id"),
                "body": base64.b64encode(bytes(message.body)).decode("ascii"),
            })
    return out


def with_pika(url, queue):
    import pika

    out = []
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            out.append({
                "headers": plain(properties.headers or {}),
                "message_id": properties.message_id,
                "body": base64.b64encode(body).decode("ascii"),
            })
    finally:
        connection.close()
    return out


if __name__ == "__main__":
    client, url, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    read = with_kombu if client == "kombu" else with_pika
    print(json.dumps(read(url, queue)))
