"""atheris fuzz targets for the sans-I/O codecs; run as `python -m fuzz.<target> -runs=N`."""
