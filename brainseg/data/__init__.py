"""Data stage: finding cases, the demo data set, preprocessing, patches, augmentation."""
