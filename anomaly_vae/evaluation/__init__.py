"""What a person reads about a detector on labelled data: metrics, figures, an HTML report.

`metrics` computes the numbers and curves from scores and labels (no plotting), `figures`
draws them with matplotlib (one function per figure, no global pyplot state) and `report`
writes one self-contained HTML file from titled sections, so a detector kind can add its own
sections (the worst images with their heatmaps, say) beside the common ones.
"""
