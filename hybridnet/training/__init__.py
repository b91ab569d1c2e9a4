"""Training-loop pieces: callbacks, progress bar, history."""
from hybridnet.training import callbacks
