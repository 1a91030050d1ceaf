"""The audit view (`bench inspect`): what a recovered reward rewards and penalises, and where each method fails.

`pairs.py` groups held-out test pairs by the ground truth's labels and finds each method's failure pairs,
`attribution.py` says which tokens or words a reward penalises (and which the ground truth does), `view.py` builds
the document from a stored run group, `render.py` prints it as text or a small HTML page.
"""
