"""The CGI-HRDC challenge's released layout (Hypertension and Hypertensive Retinopathy
Diagnosis Challenge, MICCAI 2023), the data the seed paper studies.

Each task has 712 training PNGs (and 288 hidden test images): task 1, hypertension, 356/356;
task 2, hypertensive retinopathy, 292 positive / 420 negative. 356 images appear in both
tasks, so folds group by file name. The layout under the data root:

    1-Hypertensive Classification/1-Images/1-Training Set/<id>.png
    1-Hypertensive Classification/2-Groundtruths/HRDC Hypertensive Classification Training Labels.csv
    2-Hypertensive Retinopathy Classification/1-Images/1-Training Set/<id>.png
    2-Hypertensive Retinopathy Classification/2-Groundtruths/
        HRDC Hypertensive Retinopathy Classification Training Labels.csv

The label CSVs have the columns (Image, Hypertensive) and (Image, Hypertensive Retinopathy).
"""

IMAGES = ("1-Images", "1-Training Set")  # under a task's folder
GROUNDTRUTHS = "2-Groundtruths"

# task -> (folder, label CSV, label column)
CGI_HRDC_TASKS = {
    1: ("1-Hypertensive Classification", "HRDC Hypertensive Classification Training Labels.csv", "Hypertensive"),
    2: (
        "2-Hypertensive Retinopathy Classification",
        "HRDC Hypertensive Retinopathy Classification Training Labels.csv",
        "Hypertensive Retinopathy",
    ),
}
CGI_HRDC_CLASSES = {
    1: ("no hypertensive", "hypertensive"),
    2: ("no hypertensive retinopathy", "hypertensive retinopathy"),
}
