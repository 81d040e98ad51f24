"""The rules and the wire format: settings, names, errors, retry policy, partitioners,
message records and their JSON codec. Builds on Faust's models only (a message is a
``faust.Record``); no transport, aiokafka or redis."""
