"""The human_poses record's keypoints: COCO's 17, in COCO's order (left/right are the person's).

One definition for every pose backend (VitPose, BlazePose) and every reader of the record."""

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_KEYPOINTS = len(COCO_KEYPOINT_NAMES)
