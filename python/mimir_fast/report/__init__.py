"""``mimir_fast.report``: pictures, tables and files of training runs and evaluations.

- :func:`plot_loss_curves`: train/test loss (and accuracy) against the step, for one run or
  several side by side (e.g. pretraining and finetuning).
- :func:`save_reconstruction_grid`: original / masked / reconstruction / prediction rows of a
  MaskedViT's masked autoencoding, as in the MAE papers; :func:`save_image_grid` draws any
  named rows of images.
- :func:`format_table`: a GitHub-markdown table of result rows.
- :func:`write_json`: pretty JSON, written atomically; :func:`load_records` reads metric
  records back.
- :func:`write_report`: the files of a robustness evaluation (JSON, markdown, plot).
- :func:`write_corruption_report`: the files of a corruption evaluation (JSON, markdown with
  CE and mCE, accuracy heatmap).

Figures are drawn with matplotlib's Agg canvas on a private ``Figure`` (no pyplot, no global
backend switch, nothing is ever shown), and written atomically: a reader sees either the old
file or the complete new one. matplotlib is imported only when a figure is drawn.
"""

from .corruptions import write_corruption_report
from .evaluation import write_report
from .figures import plot_loss_curves, save_image_grid, save_reconstruction_grid
from .files import load_records, write_json
from .tables import format_table

__all__ = [
    "format_table",
    "load_records",
    "plot_loss_curves",
    "save_image_grid",
    "save_reconstruction_grid",
    "write_corruption_report",
    "write_json",
    "write_report",
]
