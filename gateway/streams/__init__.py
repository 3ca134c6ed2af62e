"""Event-stream inference: consumers that answer OIP v2 requests read from Redis Streams or
Kafka and write the predictions to another stream (README "Event streams").

Kept empty on purpose: the settings import `gateway.streams.config`, and the consumers import
the settings.
"""
