"""`accelerate launch -m tuneloop.train RECIPE [options]` and `torchrun -m tuneloop.train ...`: every rank runs this."""

from tuneloop.cli import app

if __name__ == "__main__":
    import sys

    app(["train", *sys.argv[1:]], prog_name="tuneloop.train")
