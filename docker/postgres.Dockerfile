# PostgreSQL 15 for the local container cluster, from Debian's packages (no registry needed:
# it builds on the locally imported debian:bookworm-slim, see scripts/docker-build.sh).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 postgresql-contrib \
 && rm -rf /var/lib/apt/lists/*
USER postgres
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
# Trust on the compose network only: this image is for local clusters and tests.
RUN initdb -U postgres --auth=trust -E UTF8 \
 && echo "listen_addresses = '*'" >> $PGDATA/postgresql.conf \
 && echo "shared_preload_libraries = 'pg_stat_statements'" >> $PGDATA/postgresql.conf \
 && echo "host all all 0.0.0.0/0 trust" >> $PGDATA/pg_hba.conf \
 && pg_ctl -w start && createdb geecache && psql -d geecache -c 'CREATE EXTENSION pg_stat_statements' \
 && pg_ctl -w stop
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=2s --retries=30 CMD ["pg_isready", "-h", "127.0.0.1", "-d", "geecache"]
CMD ["postgres"]
