"""The native Avro -> COPY transcoder (native/transcode.c) as an optional C extension.

Everything else about the package is in pyproject.toml. ``optional=True``: where no C
compiler is found the build goes on without it and gatestream decodes in Python (the
ingest consumer logs which path runs)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gatestream.consumers._transcode",
            ["native/transcode.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11", "-Wall"],
        )
    ]
)
