"""`python -m blobwriter.decode_worker`: one decoding worker process of a Reader (see decoding.py)."""

if __name__ == "__main__":
    from blobwriter.decoding import _serve

    _serve()
