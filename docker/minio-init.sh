#!/bin/sh
# Bucket and lifecycle rules for the compose deployment. Objects carry a `kind` tag set by the service
# (tumorsynth/storage/keys.py:object_kind): uploads expire sooner than generated outputs.
set -eu
mc alias set ts "http://minio:9000" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "ts/$TUMORSYNTH_S3_BUCKET"
mc ilm rule ls "ts/$TUMORSYNTH_S3_BUCKET" | grep -q "kind=input" || \
  mc ilm rule add --tags "kind=input" --expire-days "${INPUT_RETENTION_DAYS:-7}" "ts/$TUMORSYNTH_S3_BUCKET"
mc ilm rule ls "ts/$TUMORSYNTH_S3_BUCKET" | grep -q "kind=output" || \
  mc ilm rule add --tags "kind=output" --expire-days "${OUTPUT_RETENTION_DAYS:-30}" "ts/$TUMORSYNTH_S3_BUCKET"
echo "bucket $TUMORSYNTH_S3_BUCKET ready"
