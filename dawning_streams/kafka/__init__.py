"""Kafka through Faust and aiokafka: the transport and its lanes, which decide when
offsets are committed, group-less readers (broadcast, replica, reading), table helpers,
security options and outage detection. ``faust_compat`` holds every private name."""
