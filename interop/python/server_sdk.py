"""Azure's Python server SDK (azure-messaging-webpubsubservice) against
cmd/webpubsub, over http or https (cmd/webpubsub/python_test.go).

The examples of the SDK's README come first, as written there; then group,
connection and token calls. The Go test holds real WebSocket clients and
checks, after each step, what reached them. Over https the server's CA is
trusted through REQUESTS_CA_BUNDLE (the SDK's requests) and SSL_CERT_FILE
(websocket-client) only: no verify=False.

Usage: /usr/bin/python3 server_sdk.py <connection string> [certificate-error]
Protocol: before each step, one JSON line {"step": name, ...} on stdout; the
Go test answers with one JSON line (what it learnt, or {}) once it has
checked the step.
"""

import io
import json
import sys

import websocket
from azure.core.exceptions import ServiceRequestError
from azure.messaging.webpubsubservice import WebPubSubServiceClient

connection_string = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else ""


def step(name, **data):
    print(json.dumps({"step": name, **data}), flush=True)
    answer = sys.stdin.readline()
    if not answer:
        sys.exit("the Go test stopped at " + name)
    return json.loads(answer)


if mode == "certificate-error":
    service = WebPubSubServiceClient.from_connection_string(connection_string, hub="hub", retry_total=0)
    try:
        service.send_to_all(message="not trusted", content_type="text/plain")
        print(json.dumps({"step": "sent"}), flush=True)
    except ServiceRequestError as e:
        print(json.dumps({"step": "certificate-error", "message": str(e)}), flush=True)
    sys.exit(0)

service = WebPubSubServiceClient.from_connection_string(connection_string, hub="hub")

# A client without a subprotocol, and a json.webpubsub.azure.v1 client
# whose token lets it send to group "room" only.
simple = service.get_client_access_token()
with_roles = service.get_client_access_token(user_id="py-user", roles=["webpubsub.sendToGroup.room"])
answer = step("tokens", simple=simple["url"], json=with_roles["url"], baseUrl=simple["baseUrl"])
connection_id = answer["connectionId"]

# The README's examples.
service.send_to_all(message={"from": "user1", "data": "Hello world"})
step("json")
service.send_to_all(message="Hello world", content_type="text/plain")
step("text")
service.send_to_all(message=io.BytesIO(b"Hello world"), content_type="application/octet-stream")
step("binary stream")
service.send_to_all(message=b"Hello world", content_type="application/octet-stream")
step("binary bytes")

exists = {
    "connection": service.connection_exists(connection_id),
    "missingConnection": service.connection_exists("no-such-connection"),
    "user": service.user_exists("py-user"),
    "groupBefore": service.group_exists("room"),
}
service.add_connection_to_group("room", connection_id)
exists["groupAfterAdd"] = service.group_exists("room")
service.send_to_group("room", message="to room", content_type="text/plain")
service.send_to_all(message="barrier", content_type="text/plain")
step("group", **exists)

service.remove_connection_from_group("room", connection_id)
service.send_to_group("room", message="after leave", content_type="text/plain")
service.send_to_all(message="barrier 2", content_type="text/plain")
step("left", groupAfterRemove=service.group_exists("room"))

service.close_connection(connection_id, reason="bye from python")
step("closed", connectionAfterClose=service.connection_exists(connection_id))

# websocket-client, the Python client, with a token from the SDK: over
# wss it trusts the server through SSL_CERT_FILE.
ws = websocket.create_connection(service.get_client_access_token(user_id="py-ws")["url"], timeout=10)
service.send_to_user("py-ws", message="Hello websocket", content_type="text/plain")
service.send_to_user("py-ws", message=b"\x00\x01\xff", content_type="application/octet-stream")
text = ws.recv_data()
binary = ws.recv_data()
ws.close()
step(
    "websocket-client",
    text=[text[0], text[1].decode()],
    binary=[binary[0], list(binary[1])],
)
step("done")
