#!/bin/bash
# The Cairn test OpenStack (Debian 12's Zed packages): the image's CMD.
#
#   start.sh        every container start (warm: the databases, the catalog, the flavor, the
#                   images and the compute node's host mapping are in the image). Starts every
#                   service, waits until a server create would schedule, prints READY_LINE,
#                   then waits; if a service dies it prints the ends of the logs and exits
#                   non-zero, so the container stops and the harness reports why.
#   start.sh init   once, at image build time, in the build chroot (its own network and pid
#                   namespaces): databases, Keystone bootstrap, catalog, flavor, images, host
#                   discovery, a smoke test (a server ACTIVE then deleted), a clean stop.
#
# Everything listens on 127.0.0.1 (the container shares the host's network): Keystone 5000,
# Glance 9292, Neutron 9696, Placement 8778, Nova 8774; RabbitMQ on 17672 (epmd 17369,
# distribution 17673), off its default ports; MariaDB on its unix socket only. Every service
# runs as root (`docker import` makes every file root's). Service stdout/stderr go to
# /var/log/cairn/NAME.log, their own logs to /var/log/{keystone,glance,neutron,placement,nova}.
set -euo pipefail

MODE=${1:-run}
HERE=/opt/cairn-openstack
LOGS=/var/log/cairn
READY_LINE="cairn-openstack: ready"
READY_TIMEOUT=${CAIRN_OPENSTACK_READY_TIMEOUT:-300}

set -a
# shellcheck source=credentials.env
. "$HERE/credentials.env"
set +a
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root
# The RabbitMQ CLI and server read these from rabbitmq-env.conf; exported too for any Erlang
# tool run from here.
export ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=17369

declare -A PIDS=()   # service name -> pid
ORDER=()             # service names, in start order

log() { echo "cairn-openstack: $*"; }

# The ends of every log, then exit 1.
die() {
    log "FAILED: $*" >&2
    for f in "$LOGS"/*.log /var/log/{keystone,glance,neutron,placement,nova}/*.log; do
        [ -s "$f" ] || continue
        echo "----- $f (end) -----" >&2
        tail -n 25 "$f" >&2
    done
    exit 1
}

# launch NAME CMD...: start a service in the background.
launch() {
    local name=$1; shift
    "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    PIDS[$name]=$!
    ORDER+=("$name")
}

# Dies naming the first service that has exited.
check_alive() {
    local name
    for name in "${ORDER[@]}"; do
        kill -0 "${PIDS[$name]}" 2>/dev/null || die "$name exited early (see $LOGS/$name.log)"
    done
}

# wait_for WHAT TIMEOUT CMD...: until CMD succeeds, while every service lives.
wait_for() {
    local what=$1 timeout=$2; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        check_alive
        [ $SECONDS -lt "$deadline" ] || die "$what not up after $timeout s"
        sleep 0.2
    done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# uwsgi_app NAME PORT WSGI_SCRIPT [uwsgi options]: a WSGI API under uwsgi.
uwsgi_app() {
    local name=$1 port=$2 script=$3; shift 3
    # --add-header "Connection: close": uwsgi's plain --http-socket does not keep
    #   connections alive, and clients that reuse them get "Connection reset by peer".
    # --need-app: exit (and so fail the start) if the application does not load, instead of
    #   answering 500 forever. --disable-logging: no line per request (tests poll).
    launch "$name" uwsgi --plugin python3 --master --die-on-term --enable-threads --need-app \
        --buffer-size 65535 --add-header "Connection: close" --disable-logging \
        --http-socket "127.0.0.1:$port" --wsgi-file "$script" "$@"
}

start_infra() {
    mkdir -p /run/mysqld "$LOGS"
    launch mariadb /usr/sbin/mariadbd
    # The wrapper in /usr/sbin would `su rabbitmq`; root runs the server itself. HOME is
    # where its Erlang cookie is. SIGTERM to this script stops the broker cleanly.
    launch rabbitmq env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server
    wait_for MariaDB 120 mariadb-admin ping
}

# Build time: the databases and their users, every schema, Keystone's bootstrap.
init_databases() {
    local sql="" pair user db
    for pair in keystone:keystone glance:glance placement:placement neutron:neutron \
                nova:nova_api nova:nova nova:nova_cell0; do
        user=${pair%%:*} db=${pair#*:}
        sql+="CREATE DATABASE IF NOT EXISTS $db;"
        sql+="CREATE USER IF NOT EXISTS '$user'@'localhost' IDENTIFIED BY '$SERVICE_PASSWORD';"
        sql+="GRANT ALL PRIVILEGES ON $db.* TO '$user'@'localhost';"
    done
    mariadb -e "$sql" || die "creating the databases"
    # Three independent chains in parallel (the machine has two cores; Neutron's
    # migrations alone take the longest).
    (
        set -e
        keystone-manage db_sync
        keystone-manage fernet_setup --keystone-user root --keystone-group root
        keystone-manage credential_setup --keystone-user root --keystone-group root
        keystone-manage bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
            --bootstrap-username "$ADMIN_USER" --bootstrap-project-name "$ADMIN_PROJECT" \
            --bootstrap-admin-url http://127.0.0.1:5000/v3/ \
            --bootstrap-internal-url http://127.0.0.1:5000/v3/ \
            --bootstrap-public-url http://127.0.0.1:5000/v3/ \
            --bootstrap-region-id "$REGION"
        glance-manage db_sync
        placement-manage db sync
    ) >"$LOGS/init-keystone-glance-placement.log" 2>&1 &
    local a=$!
    neutron-db-manage --config-file /etc/neutron/neutron.conf \
        --config-file /etc/neutron/plugins/ml2/ml2_conf.ini upgrade heads \
        >"$LOGS/init-neutron.log" 2>&1 &
    local b=$!
    (
        set -e
        nova-manage api_db sync
        nova-manage cell_v2 map_cell0
        nova-manage cell_v2 create_cell --name=cell1 --verbose
        # Also brings cell0's schema up to date.
        nova-manage db sync
    ) >"$LOGS/init-nova.log" 2>&1 &
    local c=$!
    wait $a || die "keystone/glance/placement database initialisation"
    wait $b || die "neutron database initialisation"
    wait $c || die "nova database initialisation"
    log "databases initialised"
}

# Keystone, Glance and Placement need only the database.
start_apis() {
    uwsgi_app keystone 5000 /usr/bin/keystone-wsgi-public --processes 1 --threads 4
    launch glance-api /usr/bin/glance-api --config-file /etc/glance/glance-api.conf
    uwsgi_app placement 8778 /usr/bin/placement-api --processes 1 --threads 4
}

# Neutron and Nova need RabbitMQ too (they would retry, with growing pauses).
start_compute() {
    wait_for RabbitMQ 120 tcp_open 17672
    launch neutron-server /usr/bin/neutron-server --config-file /etc/neutron/neutron.conf \
        --config-file /etc/neutron/plugins/ml2/ml2_conf.ini
    # Nova's API is not thread-safe under uwsgi (Debian runs it with threads = 1): two
    # processes so a test polling the servers API does not queue the controller's calls.
    # --rem-header Content-Length: as Debian's nova-api-uwsgi.ini.
    uwsgi_app nova-api 8774 /usr/bin/nova-api-wsgi --lazy-apps --processes 2 --threads 1 \
        --rem-header Content-Length
    launch nova-conductor /usr/bin/nova-conductor --config-file /etc/nova/nova.conf
    launch nova-scheduler /usr/bin/nova-scheduler --config-file /etc/nova/nova.conf
    launch nova-compute /usr/local/bin/nova-compute --config-file /etc/nova/nova.conf
}

# Every service, OpenStack's first (so they do not spin on a vanished broker or database),
# then RabbitMQ and MariaDB, each cleanly: the image keeps their files.
stop_all() {
    local name pid deadline
    for name in "${ORDER[@]}"; do
        case $name in mariadb|rabbitmq) ;; *) kill -TERM "${PIDS[$name]}" 2>/dev/null || true ;; esac
    done
    deadline=$((SECONDS + 30))
    for name in "${ORDER[@]}"; do
        case $name in mariadb|rabbitmq) continue ;; esac
        pid=${PIDS[$name]}
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    kill -TERM "${PIDS[rabbitmq]}" 2>/dev/null || true
    wait "${PIDS[rabbitmq]}" 2>/dev/null || true
    mariadb-admin shutdown 2>/dev/null || kill -TERM "${PIDS[mariadb]}" 2>/dev/null || true
    wait "${PIDS[mariadb]}" 2>/dev/null || true
    log "stopped"
}

main() {
    # Reports older than this start do not count as "up" (setup.py wait-ready).
    local since
    since=$(date +%s)
    mkdir -p "$LOGS"
    start_infra
    [ "$MODE" = init ] && init_databases
    start_apis
    if [ "$MODE" = init ]; then
        # nova-compute registers its resource provider with Placement as it starts: the
        # catalog must list Placement by then.
        wait_for Keystone 120 tcp_open 5000
        python3 "$HERE/setup.py" catalog || die "the catalog"
    fi
    start_compute
    python3 "$HERE/setup.py" wait-ready "$since" "$READY_TIMEOUT" || die "readiness"
    check_alive
    if [ "$MODE" = init ]; then
        # Maps cairn-compute into cell1. The mapping lives in the nova_api database, so
        # every later start (same fixed `host`, same database) has it: no discovery then.
        nova-manage cell_v2 discover_hosts --verbose >"$LOGS/discover-hosts.log" 2>&1 \
            || die "nova-manage cell_v2 discover_hosts"
        python3 "$HERE/setup.py" content || die "the flavor and images"
        python3 "$HERE/setup.py" smoke || die "the smoke test"
        stop_all
        # Logs of the build are not the logs of a container.
        rm -rf "${LOGS:?}"/* /var/log/{keystone,glance,neutron,placement,nova,rabbitmq}/*
        exit 0
    fi
    trap 'log "stopping"; stop_all; exit 0' TERM INT
    log "${READY_LINE#cairn-openstack: } after $((SECONDS)) s"
    # Wakes when any service exits (or a signal comes): a dead service stops the container.
    while true; do
        wait -n || true
        check_alive
    done
}

case $MODE in
    run | init) main ;;
    *) echo "usage: $0 [init]" >&2; exit 64 ;;
esac
