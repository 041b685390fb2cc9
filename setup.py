from setuptools import find_packages, setup

setup(
    name="iadet",
    version="0.1.0",
    description="IoU-aware single-stage object detector (Wu, Li, Wang) in pure PyTorch",
    packages=find_packages(include=["iadet", "iadet.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "pycocotools>=2.0.6",
        "numpy>=1.23",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "tensorboard>=2.10",
        "matplotlib>=3.5",
        "pillow>=9.0",
    ],
    extras_require={
        "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17"],  # python -m iadet.export --format onnx
        "dev": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17"],
    },
)
