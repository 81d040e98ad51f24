#!/usr/bin/env bash
# One Apache Kafka node in KRaft mode (broker and controller in one process),
# built from the official artifacts on Maven Central: a single-node cluster
# by default, or one node of a quorum.
#
#   scripts/kafka.sh start|stop|status
#   scripts/kafka.sh launch|await
#
# KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093) and KAFKA_DATA_DIR
# (.local/dev/kafka) choose the instance, so a test broker never collides with
# a development one; KAFKA_MESSAGE_MAX_BYTES raises the broker's record size
# limit (default about 1 MB). The jars are resolved once into KAFKA_CACHE_DIR
# (default ~/.cache/dawning-streams; not a DAWNING_ variable, which the settings would take for one of theirs).
# KAFKA_HEAP_OPTS sizes the JVM (default -Xms256m -Xmx1g).
#
# KAFKA_VERSION picks the release (default: scripts/kafka-pom.xml's). Storage
# is formatted for one release: a data directory formatted by another major
# release is refused, naming the directory (the release is recorded in
# $KAFKA_DATA_DIR/data/dawning-kafka-release at format time).
#
# A node of a quorum: KAFKA_NODE_ID (1) and KAFKA_VOTERS, the quorum as
# `id@host:controller_port,...` (default: this node alone). With three voters
# or more, topics get 3 replicas and need 2 in sync. Every node of a cluster
# is formatted with the cluster id in KAFKA_CLUSTER_ID_FILE (made by the first
# node formatted; unset: an id of the node's own). `start` is `launch` then
# `await`: a node of a quorum cannot finish starting until a majority of the
# voters runs, so the nodes of a cluster are launched first, then awaited.
#
# With KAFKA_SASL_PORT set, the broker also listens there with SASL_SSL:
# PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for KAFKA_SASL_USER/KAFKA_SASL_PASSWORD,
# behind a certificate for 127.0.0.1 and localhost signed by a CA made for it
# ($KAFKA_DATA_DIR/tls/ca.pem, which clients trust).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
kafka_version=${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka-pom.xml")}
kafka_major=${kafka_version%%.*}
cache_dir=${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dawning-streams}
libs="$cache_dir/kafka-$kafka_version/libs"
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-9093}
data_dir=${KAFKA_DATA_DIR:-$root/.local/dev/kafka}
sasl_port=${KAFKA_SASL_PORT:-}
sasl_user=${KAFKA_SASL_USER:-dawning}
sasl_password=${KAFKA_SASL_PASSWORD:-dawning-secret}
tls_dir="$data_dir/tls"
pid_file="$data_dir/kafka.pid"
node_id=${KAFKA_NODE_ID:-1}
voters=${KAFKA_VOTERS:-$node_id@127.0.0.1:$controller_port}
cluster_id_file=${KAFKA_CLUSTER_ID_FILE:-}
release_file="$data_dir/data/dawning-kafka-release"
# Topics are replicated on up to three nodes, and need all but one of them in sync.
voter_count=$(tr ',' '\n' <<<"$voters" | grep -c .)
replication=$((voter_count < 3 ? voter_count : 3))
min_insync=$((replication > 1 ? replication - 1 : 1))

log() { printf 'kafka: %s\n' "$*" >&2; }

# A broker that has exited but not yet been reaped (a zombie) is not running.
alive_pid() { kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]; }

running() { [[ -f $pid_file ]] && alive_pid "$(cat "$pid_file")"; }

fetch() {
    [[ -f "$libs/kafka_2.13-$kafka_version.jar" ]] && return
    log "resolving Apache Kafka $kafka_version from Maven Central into $libs"
    command -v mvn >/dev/null || { log "Maven (mvn) is required to fetch Kafka"; exit 1; }
    local tmp="$libs.partial"
    rm -rf "$tmp"
    # Kafka 4 logs through log4j2; 3.x through log4j 1 (reload4j).
    local logging=log4j1
    ((kafka_major >= 4)) && logging=log4j2
    mvn -q -B -Dstyle.color=never -f "$here/kafka-pom.xml" dependency:copy-dependencies \
        -Dkafka.version="$kafka_version" -P"$logging" \
        -DincludeScope=runtime -DoutputDirectory="$tmp"
    mv "$tmp" "$libs"
}

read -ra heap_opts <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
if ((kafka_major >= 4)); then
    log_config=-Dlog4j2.configurationFile="$data_dir/log4j2.properties"
else
    log_config=-Dlog4j.configuration="file:$data_dir/log4j.properties"
fi
java_opts=(
    "${heap_opts[@]}" -XX:+UseG1GC -Djava.awt.headless=true
    "$log_config"
    -Dkafka.logs.dir="$data_dir/logs"
    -cp "$libs/*"
)

# A CA and a broker certificate for 127.0.0.1/localhost, made once.
make_certificates() {
    [[ -f "$tls_dir/broker.pem" ]] && return
    command -v openssl >/dev/null || { log "openssl is required for the SASL_SSL listener"; exit 1; }
    mkdir -p "$tls_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dawning-streams test CA" \
        -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls_dir/broker.key" -out "$tls_dir/broker.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls_dir/san.ext"
    openssl x509 -req -in "$tls_dir/broker.csr" -CA "$tls_dir/ca.pem" -CAkey "$tls_dir/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tls_dir/san.ext" -out "$tls_dir/broker.crt" 2>/dev/null
    # Kafka's PEM key store: the private key (PKCS#8), then the certificate chain.
    openssl pkcs8 -topk8 -nocrypt -in "$tls_dir/broker.key" >"$tls_dir/broker.pem"
    cat "$tls_dir/broker.crt" "$tls_dir/ca.pem" >>"$tls_dir/broker.pem"
}

sasl_properties() {
    cat <<PROPS
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$tls_dir/broker.pem
ssl.client.auth=none
PROPS
}

configure() {
    mkdir -p "$data_dir/logs"
    local listeners="PLAINTEXT://127.0.0.1:$port" protocols="PLAINTEXT:PLAINTEXT"
    if [[ -n $sasl_port ]]; then
        make_certificates
        listeners="$listeners,SASL_SSL://127.0.0.1:$sasl_port"
        protocols="$protocols,SASL_SSL:SASL_SSL"
    fi
    cat >"$data_dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols,CONTROLLER:PLAINTEXT
log.dirs=$data_dir/data
num.partitions=3
default.replication.factor=$replication
min.insync.replicas=$min_insync
offsets.topic.replication.factor=$replication
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_insync
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=${KAFKA_MESSAGE_MAX_BYTES:-1048588}
PROPS
    [[ -z $sasl_port ]] || sasl_properties >>"$data_dir/server.properties"
    cat >"$data_dir/log4j.properties" <<'PROPS'
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
PROPS
    cat >"$data_dir/log4j2.properties" <<'PROPS'
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
PROPS
}

# Storage formatted by another major release is refused: Kafka would upgrade
# or reject its metadata on its own terms, with a node of a cluster left behind.
check_release() {
    [[ -f "$data_dir/data/meta.properties" ]] || return 0
    # Storage formatted before the release was recorded was formatted by 3.9.1.
    local formatted
    formatted=$(cat "$release_file" 2>/dev/null || echo 3.9.1)
    if [[ ${formatted%%.*} != "$kafka_major" ]]; then
        log "$data_dir/data was formatted by Apache Kafka $formatted, not $kafka_version:" \
            "a different major release. Start it with KAFKA_VERSION=$formatted, or stop" \
            "it and delete $data_dir to start afresh."
        exit 1
    fi
}

# The id every node of one cluster is formatted with.
cluster_id() {
    if [[ -n $cluster_id_file && -s $cluster_id_file ]]; then
        cat "$cluster_id_file"
        return
    fi
    local id
    id=$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid)
    if [[ -n $cluster_id_file ]]; then
        mkdir -p "$(dirname "$cluster_id_file")"
        printf '%s\n' "$id" >"$cluster_id_file"
    fi
    printf '%s\n' "$id"
}

format_storage() {
    [[ -f "$data_dir/data/meta.properties" ]] && return
    local cluster_id
    cluster_id=$(cluster_id)
    log "formatting storage in $data_dir/data (cluster $cluster_id, Apache Kafka $kafka_version)"
    local scram=()
    if [[ -n $sasl_port ]]; then
        # SCRAM credentials live in the cluster metadata, written at format time.
        for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
            scram+=(--add-scram "$mechanism=[name=$sasl_user,password=$sasl_password]")
        done
    fi
    java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$data_dir/server.properties" "${scram[@]}" >/dev/null
    printf '%s\n' "$kafka_version" >"$release_file"
}

# Starts the JVM and returns once it has written its pid, without waiting.
launch() {
    if running; then
        log "already running on 127.0.0.1:$port (pid $(cat "$pid_file"))"
        return
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "127.0.0.1:$port is already in use by another process (not $data_dir)"
        exit 1
    fi
    fetch
    check_release
    configure
    format_storage
    # The log rolls over at 20 MB (server.log.1, .2, ...): a busy broker's
    # "Kafka Server started" line moves into those, so they are read too, and
    # a previous run's are removed first.
    rm -f "$data_dir/logs/server.log".*
    : >"$data_dir/logs/server.log"
    # setsid keeps the broker out of the caller's process group, so an
    # interrupted `make run` does not take it down mid-write. setsid forks when
    # it starts as a process group leader (it does under some callers), so
    # `$!` may not be the broker: the process that becomes java writes its pid.
    rm -f "$pid_file"
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pid_file" \
        java "${java_opts[@]}" kafka.Kafka "$data_dir/server.properties" \
        >"$data_dir/stdout.log" 2>&1 </dev/null &
    for _ in $(seq 1 200); do [[ -s $pid_file ]] && break; sleep 0.05; done
}

# Waits until the launched node says it has started.
await_started() {
    local deadline=$((SECONDS + 90)) tries=1
    until grep -qs "Kafka Server started" "$data_dir/logs/server.log" "$data_dir/logs/server.log".*; do
        if ! running && ((tries < 3)) &&
            grep -q "failed to bind to 127.0.0.1:$port: Address already in use" \
                "$data_dir/logs/server.log" 2>/dev/null; then
            # Ports above 32767 lie in Linux's range for client sockets: one of
            # them (the other nodes' own, mid-start) may hold the port for a moment.
            log "127.0.0.1:$port was in use by a client socket when node $node_id bound it; starting it again"
            tries=$((tries + 1))
            sleep 1
            launch
            continue
        fi
        if ! running; then
            log "broker exited during start-up; see $data_dir/stdout.log and $data_dir/logs/server.log"
            tail -20 "$data_dir/stdout.log" >&2 || true
            exit 1
        fi
        if ((SECONDS > deadline)); then
            log "broker did not start within 90 s; see $data_dir/logs/server.log"
            exit 1
        fi
        sleep 0.2
    done
    local node=""
    ((voter_count == 1)) || node=" node $node_id"
    log "Apache Kafka $kafka_version$node ready on 127.0.0.1:$port${sasl_port:+ (SASL_SSL on $sasl_port)} (pid $(cat "$pid_file"))"
}

start() {
    launch
    await_started
}

stop() {
    if ! running; then
        rm -f "$pid_file"
        return
    fi
    local pid
    pid=$(cat "$pid_file")
    kill -TERM "$pid"
    for _ in $(seq 1 300); do
        alive_pid "$pid" || break
        sleep 0.1
    done
    if alive_pid "$pid"; then
        log "broker did not stop within 30 s; killing it"
        kill -KILL "$pid"
    fi
    rm -f "$pid_file"
    log "stopped"
}

status() {
    if running; then
        log "running on 127.0.0.1:$port (pid $(cat "$pid_file"))"
    else
        log "not running"
        return 1
    fi
}

case ${1:-} in
    start) start ;;
    launch) launch ;;
    await) await_started ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|launch|await|stop|status" >&2; exit 2 ;;
esac
