"""Facts about media files that several layers share: which extensions each job reads."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                    ".heic", ".heif", ".hif", ".avif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".mpg",
                    ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}
