#!/usr/bin/env bash
# Starts or stops the real services on loopback: Apache Kafka (KRaft), Redis,
# an SMTP capture server and, for the audit store's tests, PostgreSQL and MariaDB.
#
#   scripts/services.sh start|stop|status dev|test|sasl|faults|bench|cluster
#   scripts/services.sh start-kafka|stop-kafka|start-redis|stop-redis|start-smtp|stop-smtp PROFILE
#   scripts/services.sh start-kafka|stop-kafka cluster N
#   scripts/services.sh start-mariadb|stop-mariadb PROFILE
#   scripts/services.sh worker-env PROFILE
#
# A profile runs only the services it gives ports for: `sasl` is a second
# Kafka broker with a SASL_SSL listener, for the Kafka security tests.
# `cluster` is three Kafka nodes in one KRaft quorum (KAFKA_PORTS and
# KAFKA_CONTROLLER_PORTS list a port per node); `start-kafka cluster N` and
# `stop-kafka cluster N` act on node N alone (without N, on every node).
# `worker-env` prints the settings a worker needs for the profile's services,
# one VAR=value a line (`make cluster` runs the worker with them).
# The profile's ports and data directory come from scripts/<profile>.env, so the
# test services never collide with the development ones. PYTHON is the
# interpreter that has aiosmtpd (the project's virtualenv). The per-service
# actions let the fault suite take one service down and bring it back while
# the others keep running.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
action=${1:-}
profile=${2:-dev}
[[ -f "$here/$profile.env" ]] || { echo "unknown profile: $profile" >&2; exit 2; }
set -a
# shellcheck source=/dev/null
source "$here/$profile.env"
set +a
data_dir="$root/$DATA_DIR"
python=${PYTHON:-$root/.venv/bin/python}

log() { printf 'services: %s\n' "$*" >&2; }

# A process that has exited but not yet been reaped (a zombie) is not alive.
alive() {
    local pid
    [[ -f $1 ]] && pid=$(cat "$1" 2>/dev/null) && kill -0 "$pid" 2>/dev/null &&
        [[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]]
}

port_free() {
    local port=$1 name=$2
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "cannot start $name: 127.0.0.1:$port is already in use by another process"
        exit 1
    fi
}

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
        sleep 0.1
    done
    log "$name did not open 127.0.0.1:$port"
    exit 1
}

install_redis() {
    command -v redis-server >/dev/null && return
    log "installing Debian's redis-server"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    # The package starts a system instance on 6379; ours run on their own.
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
    $sudo service redis-server stop >/dev/null 2>&1 || true
}

start_redis() {
    [[ -n ${REDIS_PORT:-} ]] || return 0
    install_redis
    mkdir -p "$data_dir/redis"
    if alive "$data_dir/redis/redis.pid"; then return; fi
    port_free "$REDIS_PORT" redis
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
        --dir "$data_dir/redis" --pidfile "$data_dir/redis/redis.pid" \
        --logfile "$data_dir/redis/redis.log" --save "" --appendonly no
    wait_port "$REDIS_PORT" redis
    log "redis ready on 127.0.0.1:$REDIS_PORT"
}

# PostgreSQL runs only for the tests (the audit store's default is SQLite).
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return
    log "installing Debian's postgresql"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    $sudo service postgresql stop >/dev/null 2>&1 || true
}

start_postgres() {
    [[ -n ${POSTGRES_PORT:-} ]] || return 0
    install_postgres
    local bin dir="$data_dir/postgres"
    bin=$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -1)")
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres "$dir"
    if as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then return; fi
    port_free "$POSTGRES_PORT" postgresql
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -o \
        "-p $POSTGRES_PORT -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    log "postgresql ready on 127.0.0.1:$POSTGRES_PORT"
}

stop_postgres() {
    [[ -n ${POSTGRES_PORT:-} && -f "$data_dir/postgres/data/PG_VERSION" ]] || return 0
    local bin
    bin=$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -1)")
    as_postgres "$bin/pg_ctl" -D "$data_dir/postgres/data" -m fast stop >/dev/null 2>&1 || true
}

# MariaDB, like PostgreSQL, runs only for the tests and the bench. Its own
# instance per profile: data, socket, pid file and log under the profile's
# data directory, listening on 127.0.0.1 only. The profile names the user the
# tests log in as (MARIADB_USER, MARIADB_PASSWORD).

install_mariadb() {
    [[ -x /usr/sbin/mariadbd ]] && command -v mariadb-install-db >/dev/null && return
    log "installing Debian's mariadb-server"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mariadb-server >/dev/null
    # The package may start a system instance on 3306; ours run on their own.
    $sudo systemctl disable --now mariadb >/dev/null 2>&1 || true
    $sudo service mariadb stop >/dev/null 2>&1 || true
}

mariadb_sql() {
    mariadb --no-defaults --socket="$data_dir/mariadb/mariadb.sock" -u root "$@"
}

start_mariadb() {
    [[ -n ${MARIADB_PORT:-} ]] || return 0
    install_mariadb
    local dir="$data_dir/mariadb"
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown mysql "$dir"
    if alive "$dir/mariadb.pid"; then return; fi
    port_free "$MARIADB_PORT" mariadb
    # As root, both drop to the mysql user themselves (--user).
    local user=()
    [[ $(id -u) -eq 0 ]] && user=(--user=mysql)
    if [[ ! -d "$dir/data/mysql" ]]; then
        # root without a password (like PostgreSQL's trust), through the
        # socket in $dir only: the tests log in as $MARIADB_USER over TCP.
        mariadb-install-db --no-defaults "${user[@]}" --datadir="$dir/data" \
            --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 ||
            { log "mariadb-install-db failed, see $dir/install.log"; exit 1; }
    fi
    # Durability is traded for speed, as with PostgreSQL's fsync=off: the data
    # is the tests' and the bench's.
    setsid /usr/sbin/mariadbd --no-defaults "${user[@]}" --datadir="$dir/data" \
        --port="$MARIADB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --socket="$dir/mariadb.sock" --pid-file="$dir/mariadb.pid" \
        --log-error="$dir/mariadb.log" --innodb-flush-log-at-trx-commit=2 \
        --innodb-doublewrite=0 --innodb-buffer-pool-size=128M \
        >/dev/null 2>&1 </dev/null &
    for _ in $(seq 1 300); do
        mariadb-admin --no-defaults --socket="$dir/mariadb.sock" -u root ping \
            >/dev/null 2>&1 && break
        sleep 0.1
    done
    mariadb_sql -e "SELECT 1" >/dev/null 2>&1 ||
        { log "mariadb did not start, see $dir/mariadb.log"; exit 1; }
    # The tests create a database per test: the user may create any named dawning%.
    mariadb_sql <<SQL
DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';
CREATE USER IF NOT EXISTS '$MARIADB_USER'@'127.0.0.1' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON \`dawning%\`.* TO '$MARIADB_USER'@'127.0.0.1';
CREATE DATABASE IF NOT EXISTS dawning;
SQL
    log "mariadb ready on 127.0.0.1:$MARIADB_PORT (user $MARIADB_USER, database dawning)"
}

stop_mariadb() {
    local pid_file="$data_dir/mariadb/mariadb.pid"
    alive "$pid_file" || return 0
    kill -TERM "$(cat "$pid_file")"
    # InnoDB flushes its buffer pool on the way down: longer than stop_pid waits.
    for _ in $(seq 1 300); do alive "$pid_file" || return 0; sleep 0.1; done
    log "mariadb did not stop within 30 s"
    exit 1
}

start_smtp() {
    [[ -n ${SMTP_PORT:-} ]] || return 0
    mkdir -p "$data_dir"/smtp/maildir/{cur,new,tmp}
    local pid_file="$data_dir/smtp/smtp.pid"
    if alive "$pid_file"; then return; fi
    port_free "$SMTP_PORT" "the SMTP sink"
    # The process that becomes the sink writes its pid: setsid may fork (see kafka.sh).
    rm -f "$pid_file"
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pid_file" \
        "$python" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" \
        -c aiosmtpd.handlers.Mailbox "$data_dir/smtp/maildir" \
        >"$data_dir/smtp/smtp.log" 2>&1 </dev/null &
    wait_port "$SMTP_PORT" "SMTP sink"
    log "SMTP sink ready on 127.0.0.1:$SMTP_PORT, mail in $data_dir/smtp/maildir"
}

stop_pid() {
    local pid_file=$1
    if alive "$pid_file"; then
        kill -TERM "$(cat "$pid_file")"
        for _ in $(seq 1 50); do alive "$pid_file" || break; sleep 0.1; done
    fi
    rm -f "$pid_file"
}

kafka_one() { KAFKA_DATA_DIR="$data_dir/kafka" "$here/kafka.sh" "$@"; }

# The cluster profile's nodes: node N has the N-th port of each list.
IFS=, read -ra cluster_ports <<<"${KAFKA_PORTS:-}"
IFS=, read -ra cluster_controllers <<<"${KAFKA_CONTROLLER_PORTS:-}"

voters() {
    local n voters=()
    for n in "${!cluster_controllers[@]}"; do
        voters+=("$((n + 1))@127.0.0.1:${cluster_controllers[$n]}")
    done
    local IFS=,
    printf '%s' "${voters[*]}"
}

kafka_node() {
    local node=$1
    shift
    [[ $node =~ ^[0-9]+$ && $node -ge 1 && $node -le ${#cluster_ports[@]} ]] ||
        { log "no Kafka node $node in this profile (1 to ${#cluster_ports[@]})"; exit 2; }
    KAFKA_NODE_ID=$node KAFKA_VOTERS=$(voters) \
        KAFKA_PORT=${cluster_ports[$((node - 1))]} \
        KAFKA_CONTROLLER_PORT=${cluster_controllers[$((node - 1))]} \
        KAFKA_DATA_DIR="$data_dir/kafka-$node" \
        KAFKA_CLUSTER_ID_FILE="$data_dir/cluster.id" \
        "$here/kafka.sh" "$@"
}

nodes() { seq 1 "${#cluster_ports[@]}"; }

# Every Kafka node of the profile, or node $2 of a cluster.
kafka() {
    local action=$1 node=${2:-}
    if ((${#cluster_ports[@]} == 0)); then
        kafka_one "$action"
    elif [[ -n $node ]]; then
        kafka_node "$node" "$action"
    elif [[ $action == start ]]; then
        # A node finishes starting only once a majority of the quorum runs:
        # all are launched, then all awaited.
        for node in $(nodes); do kafka_node "$node" launch; done
        for node in $(nodes); do kafka_node "$node" await; done
    elif [[ $action == stop ]]; then
        # Together: the last node alone would wait on a quorum that is gone.
        local pids=()
        for node in $(nodes); do
            kafka_node "$node" stop &
            pids+=($!)
        done
        local failed=0
        for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
        return $failed
    else
        local failed=0
        for node in $(nodes); do kafka_node "$node" "$action" || failed=1; done
        return $failed
    fi
}

worker_env() {
    local servers=() replication=1
    if ((${#cluster_ports[@]} > 0)); then
        local port
        for port in "${cluster_ports[@]}"; do servers+=("127.0.0.1:$port"); done
        replication=$((${#cluster_ports[@]} < 3 ? ${#cluster_ports[@]} : 3))
    else
        servers=("127.0.0.1:$KAFKA_PORT")
    fi
    local IFS=,
    printf 'Kafka__BootstrapServers=%s\n' "${servers[*]}"
    printf 'Kafka__ReplicationFactor=%s\n' "$replication"
    [[ -z ${REDIS_PORT:-} ]] || printf 'Redis__Url=redis://127.0.0.1:%s/0\n' "$REDIS_PORT"
    [[ -z ${SMTP_PORT:-} ]] || printf 'Smtp__Port=%s\n' "$SMTP_PORT"
    [[ -z ${WEB_PORT:-} ]] || printf 'Web__Port=%s\n' "$WEB_PORT"
}

case $action in
    start)
        kafka start
        start_redis
        start_smtp
        start_postgres
        start_mariadb
        ;;
    stop)
        stop_mariadb
        stop_postgres
        stop_pid "$data_dir/smtp/smtp.pid"
        stop_pid "$data_dir/redis/redis.pid"
        kafka stop
        ;;
    start-kafka) kafka start "${3:-}" ;;
    stop-kafka) kafka stop "${3:-}" ;;
    worker-env) worker_env ;;
    start-redis) start_redis ;;
    stop-redis) stop_pid "$data_dir/redis/redis.pid" ;;
    start-smtp) start_smtp ;;
    stop-smtp) stop_pid "$data_dir/smtp/smtp.pid" ;;
    start-mariadb) start_mariadb ;;
    stop-mariadb) stop_mariadb ;;
    status)
        kafka status || true
        alive "$data_dir/redis/redis.pid" && log "redis running" || log "redis not running"
        alive "$data_dir/smtp/smtp.pid" && log "SMTP sink running" || log "SMTP sink not running"
        if [[ -n ${MARIADB_PORT:-} ]]; then
            alive "$data_dir/mariadb/mariadb.pid" && log "mariadb running" ||
                log "mariadb not running"
        fi
        ;;
    *)
        echo "usage: $0 start|stop|status|worker-env|{start,stop}-{kafka,redis,smtp,mariadb} dev|test|sasl|faults|bench|cluster [NODE]" >&2
        exit 2
        ;;
esac
