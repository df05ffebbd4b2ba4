//! Dataset loading tests: real Fashion-MNIST, crafted IDX and CIFAR files, bad files.

use super::cifar::CIFAR_PIXELS;
use super::idx::{IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};
use super::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [IDX_IMAGES_MAGIC, n, rows, cols] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Three 28x28 images: image i has pixel p = (i * 7 + p) % 256.
fn mnist_pixels(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0..784).map(move |p| ((i * 7 + p) % 256) as u8))
        .collect()
}

/// Writes a test split; `gz` picks the compressed file names.
fn write_mnist(dir: &Path, images: &[u8], labels: &[u8], gz: bool) {
    let ext = if gz { ".gz" } else { "" };
    let f = |d: &[u8]| if gz { gzip(d) } else { d.to_vec() };
    std::fs::write(dir.join(format!("t10k-images-idx3-ubyte{ext}")), f(images)).unwrap();
    std::fs::write(dir.join(format!("t10k-labels-idx1-ubyte{ext}")), f(labels)).unwrap();
}

fn expect_dataset_err(r: Result<Dataset>, file: &str) -> String {
    match r {
        Err(e @ Error::Dataset { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(file), "message `{msg}` does not name {file}");
            msg
        }
        Err(e) => panic!("expected Error::Dataset, got {e:?}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn real_fashion_mnist() {
    let Some(dir) = DatasetKind::FashionMnist.default_dir() else {
        println!("skipped: no /usr/share/datasets/fashion-mnist");
        return;
    };
    let test = load(&dir, DatasetKind::FashionMnist, Split::Test, None).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.shape, [1, 28, 28]);
    assert_eq!(test.images.len(), 10_000 * 784);
    assert_eq!(
        test.labels[..16],
        [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1]
    );
    let train = load(&dir, DatasetKind::FashionMnist, Split::Train, None).unwrap();
    assert_eq!(train.len(), 60_000);
    let few = load(&dir, DatasetKind::FashionMnist, Split::Test, Some(16)).unwrap();
    assert_eq!(few.labels, test.labels[..16]);
    assert_eq!(few.images, test.images[..16 * 784]);
}

#[test]
fn idx_raw_and_gzip_round_trip() {
    let pixels = mnist_pixels(3);
    let images = idx_images(3, 28, 28, &pixels);
    let labels = idx_labels(&[4, 0, 9]);
    for gz in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        write_mnist(tmp.path(), &images, &labels, gz);
        let d = load(tmp.path(), DatasetKind::Mnist, Split::Test, None).unwrap();
        assert_eq!(d.labels, [4, 0, 9]);
        assert_eq!(d.images, pixels);
        assert_eq!((d.classes, d.shape), (10, [1, 28, 28]));
        let d = load(tmp.path(), DatasetKind::Mnist, Split::Test, Some(2)).unwrap();
        assert_eq!(d.labels, [4, 0]);
        assert_eq!(d.images, pixels[..2 * 784]);
    }
}

#[test]
fn gzip_detected_under_a_raw_name() {
    let tmp = tempfile::tempdir().unwrap();
    let pixels = mnist_pixels(1);
    let dir = tmp.path();
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte"),
        gzip(&idx_images(1, 28, 28, &pixels)),
    )
    .unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(&[3])).unwrap();
    let d = load(dir, DatasetKind::FashionMnist, Split::Test, None).unwrap();
    assert_eq!((d.labels, d.images), (vec![3], pixels));
}

#[test]
fn normalisation_of_known_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pixels = vec![0u8; 2 * 784];
    pixels[784 + 5] = 255;
    pixels[784 + 6] = 51;
    write_mnist(
        tmp.path(),
        &idx_images(2, 28, 28, &pixels),
        &idx_labels(&[1, 2]),
        false,
    );
    let d = load(tmp.path(), DatasetKind::FashionMnist, Split::Test, None).unwrap();
    let norm = DatasetKind::FashionMnist.normalization();
    let (x, y) = d.batch(&[1, 0], &norm);
    assert_eq!(y, [2, 1]);
    assert_eq!(x.len(), 2 * 784);
    let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
    assert!(close(x[5], (1.0 - 0.2860) / 0.3530));
    assert!(close(x[6], (0.2 - 0.2860) / 0.3530));
    assert!(close(x[0], -0.2860 / 0.3530));
    assert!(close(x[784 + 5], -0.2860 / 0.3530));
}

fn cifar_record(label: &[u8], seed: u8) -> Vec<u8> {
    let mut r = label.to_vec();
    r.extend((0..CIFAR_PIXELS).map(|p| (p as u8).wrapping_mul(3).wrapping_add(seed)));
    r
}

#[test]
fn cifar10_round_trip_with_subfolder_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&sub).unwrap();
    for b in 1..=5u8 {
        let data = [cifar_record(&[b], b), cifar_record(&[9 - b], b + 10)].concat();
        std::fs::write(sub.join(format!("data_batch_{b}.bin")), data).unwrap();
    }
    std::fs::write(sub.join("test_batch.bin"), cifar_record(&[7], 99)).unwrap();

    for dir in [tmp.path(), sub.as_path()] {
        let d = load(dir, DatasetKind::Cifar10, Split::Train, None).unwrap();
        assert_eq!(d.len(), 10);
        assert_eq!(d.labels, [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]);
        assert_eq!(d.images.len(), 10 * CIFAR_PIXELS);
        // Record 3 is batch 2's second record; the file layout is already CHW.
        assert_eq!(
            d.images[3 * CIFAR_PIXELS..4 * CIFAR_PIXELS],
            cifar_record(&[7], 12)[1..]
        );
        let t = load(dir, DatasetKind::Cifar10, Split::Test, None).unwrap();
        assert_eq!((t.labels, t.shape), (vec![7], [3, 32, 32]));
    }
    let d = load(tmp.path(), DatasetKind::Cifar10, Split::Train, Some(3)).unwrap();
    assert_eq!(d.labels, [1, 8, 2]);

    // Per-channel normalisation: pixel (c=2, y=0, x=0) of record 0.
    let norm = DatasetKind::Cifar10.normalization();
    let (x, _) = d.batch(&[0], &norm);
    let raw = d.images[2 * 1024];
    let want = (f32::from(raw) / 255.0 - 0.4465) / 0.2616;
    assert!((x[2 * 1024] - want).abs() < 1e-5);
}

#[test]
fn cifar100_uses_fine_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("cifar-100-binary");
    std::fs::create_dir(&sub).unwrap();
    let data = [cifar_record(&[3, 42], 0), cifar_record(&[19, 99], 1)].concat();
    std::fs::write(sub.join("train.bin"), &data).unwrap();
    let d = load(tmp.path(), DatasetKind::Cifar100, Split::Train, None).unwrap();
    assert_eq!((d.labels.clone(), d.classes), (vec![42, 99], 100));
    assert_eq!(d.images[CIFAR_PIXELS..], data[CIFAR_PIXELS + 2 + 2..]);
    let msg = expect_dataset_err(
        load(tmp.path(), DatasetKind::Cifar100, Split::Test, None),
        "test.bin",
    );
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn noise_spans_the_normalised_range() {
    let norm = DatasetKind::Cifar10.normalization();
    let x = noise_batch(4, [3, 8, 8], &norm, 7);
    assert_eq!(x.len(), 4 * 3 * 64);
    assert_eq!(x, noise_batch(4, [3, 8, 8], &norm, 7));
    assert_ne!(x, noise_batch(4, [3, 8, 8], &norm, 8));
    for (i, v) in x.iter().enumerate() {
        let c = (i / 64) % 3;
        let (m, s) = (norm.mean[c], norm.std[c]);
        assert!(*v >= -m / s && *v < (1.0 - m) / s, "value {v} channel {c}");
    }
    // Each channel covers most of its range.
    let ch0: Vec<f32> = x.chunks(64).step_by(3).flatten().copied().collect();
    let (lo, hi) = ch0
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(lo < -0.4914 / 0.2470 + 0.2 && hi > (1.0 - 0.4914) / 0.2470 - 0.2);
}

#[test]
fn holdout_split_is_deterministic_and_disjoint() {
    let d = Dataset {
        kind: DatasetKind::Mnist,
        images: vec![0; 100 * 784],
        labels: vec![0; 100],
        shape: [1, 28, 28],
        classes: 10,
    };
    let (train, held) = d.holdout_split(17, 42);
    assert_eq!((train.len(), held.len()), (83, 17));
    assert_eq!((train.clone(), held.clone()), d.holdout_split(17, 42));
    assert_ne!(held, d.holdout_split(17, 43).1);
    let mut all = [train, held.clone()].concat();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert_ne!(held, (0..17).collect::<Vec<_>>());
    assert_eq!(d.holdout_split(500, 1).1.len(), 100);
}

#[test]
fn augmentation_translates_and_mirrors_with_zero_fill() {
    // One 3x3 image 1..9 (raw bytes); identity normalisation so values stay readable.
    let d = Dataset {
        kind: DatasetKind::Mnist,
        images: (1..=9).collect(),
        labels: vec![4],
        shape: [1, 3, 3],
        classes: 10,
    };
    let norm = Normalization {
        mean: vec![0.0],
        std: vec![1.0 / 255.0],
    };
    let raw = |x: Vec<f32>| -> Vec<u8> { x.iter().map(|v| v.round() as u8).collect() };
    let mut rng = SplitMix64::new(5);
    let plain = d.batch(&[0], &norm);
    assert_eq!(
        d.batch_augmented(&[0], &norm, Augment::default(), &mut rng),
        plain
    );
    let mirrored = vec![3, 2, 1, 6, 5, 4, 9, 8, 7];
    let flip = Augment {
        shift: 0,
        flip: true,
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..32 {
        let (x, y) = d.batch_augmented(&[0], &norm, flip, &mut rng);
        assert_eq!(y, vec![4]);
        let x = raw(x);
        assert!(x == (1..=9).collect::<Vec<u8>>() || x == mirrored, "{x:?}");
        seen.insert(x);
    }
    assert_eq!(seen.len(), 2, "both orientations occur");
    // Shifts of at most one pixel: every output is the image moved by (dy, dx) in -1..=1.
    let shift = Augment {
        shift: 1,
        flip: false,
    };
    let moved = |dy: isize, dx: isize| -> Vec<u8> {
        (0..9)
            .map(|i| {
                let (y, x) = (i / 3 - dy, i % 3 - dx);
                if (0..3).contains(&y) && (0..3).contains(&x) {
                    (y * 3 + x + 1) as u8
                } else {
                    0
                }
            })
            .collect()
    };
    let all: Vec<Vec<u8>> = (-1..=1)
        .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
        .map(|(dy, dx)| moved(dy, dx))
        .collect();
    seen.clear();
    for _ in 0..200 {
        let x = raw(d.batch_augmented(&[0], &norm, shift, &mut rng).0);
        assert!(all.contains(&x), "{x:?}");
        seen.insert(x);
    }
    assert_eq!(seen.len(), 9, "all nine translations occur");
}

#[test]
fn parse_and_presets() {
    for k in DatasetKind::ALL {
        assert_eq!(DatasetKind::parse(k.name()).unwrap(), k);
        let [c, _, _] = k.image_shape();
        k.normalization().validate(c).unwrap();
    }
    assert!(matches!(
        DatasetKind::parse("imagenet"),
        Err(Error::InvalidArgument(_))
    ));
    let bad = Normalization {
        mean: vec![0.5, 0.5],
        std: vec![1.0],
    };
    assert!(matches!(bad.validate(3), Err(Error::InvalidArgument(_))));
}

#[test]
fn bad_idx_files_are_errors() {
    let pixels = mnist_pixels(2);
    let good_images = idx_images(2, 28, 28, &pixels);
    let good_labels = idx_labels(&[1, 2]);
    let img = "t10k-images-idx3-ubyte";
    let lab = "t10k-labels-idx1-ubyte";
    let case = |images: &[u8], labels: &[u8], gz: bool| {
        let tmp = tempfile::tempdir().unwrap();
        write_mnist(tmp.path(), images, labels, gz);
        load(tmp.path(), DatasetKind::Mnist, Split::Test, None)
    };

    let msg = expect_dataset_err(case(&good_images[..1000], &good_labels, false), img);
    assert!(msg.contains("declares"), "{msg}");
    expect_dataset_err(case(&good_images[..10], &good_labels, false), img);
    let trailing = [good_images.as_slice(), &[0]].concat();
    expect_dataset_err(case(&trailing, &good_labels, false), img);
    let mut wrong_magic = good_images.clone();
    wrong_magic[3] = 0x01;
    let msg = expect_dataset_err(case(&wrong_magic, &good_labels, false), img);
    assert!(msg.contains("magic"), "{msg}");
    expect_dataset_err(case(&good_images, &idx_labels(&[1, 2, 3]), false), img);
    expect_dataset_err(
        case(&idx_images(2, 32, 32, &[0; 2048]), &good_labels, false),
        img,
    );
    let msg = expect_dataset_err(case(&good_images, &idx_labels(&[1, 10]), false), lab);
    assert!(msg.contains("out of range"), "{msg}");
    let mut lab_magic = good_labels.clone();
    lab_magic[3] = 0x03;
    expect_dataset_err(case(&good_images, &lab_magic, false), lab);

    // Gzip: truncated, trailing data inside the stream, and corrupted bytes.
    let gz = gzip(&good_images);
    for cut in [5, 20, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(format!("{img}.gz")), &gz[..cut]).unwrap();
        std::fs::write(tmp.path().join(format!("{lab}.gz")), gzip(&good_labels)).unwrap();
        expect_dataset_err(load(tmp.path(), DatasetKind::Mnist, Split::Test, None), img);
    }
    expect_dataset_err(case(&trailing, &good_labels, true), img);
    for at in [12, gz.len() / 2, gz.len() - 6] {
        let mut bad = gz.clone();
        bad[at] ^= 0x55;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(format!("{img}.gz")), &bad).unwrap();
        std::fs::write(tmp.path().join(format!("{lab}.gz")), gzip(&good_labels)).unwrap();
        expect_dataset_err(load(tmp.path(), DatasetKind::Mnist, Split::Test, None), img);
    }

    // A gzip header declaring far more labels than the stream holds: no huge allocation.
    let mut liar = idx_labels(&[0; 1000]);
    liar[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(format!("{img}.gz")), gzip(&good_images)).unwrap();
    std::fs::write(tmp.path().join(format!("{lab}.gz")), gzip(&liar)).unwrap();
    expect_dataset_err(load(tmp.path(), DatasetKind::Mnist, Split::Test, None), lab);
}

#[test]
fn bad_cifar_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rec = cifar_record(&[3], 0);
    std::fs::write(
        dir.join("test_batch.bin"),
        [rec.as_slice(), &rec[..100]].concat(),
    )
    .unwrap();
    let msg = expect_dataset_err(
        load(dir, DatasetKind::Cifar10, Split::Test, None),
        "test_batch.bin",
    );
    assert!(msg.contains("multiple"), "{msg}");
    std::fs::write(dir.join("test_batch.bin"), cifar_record(&[10], 0)).unwrap();
    let msg = expect_dataset_err(
        load(dir, DatasetKind::Cifar10, Split::Test, None),
        "test_batch.bin",
    );
    assert!(msg.contains("out of range"), "{msg}");
    std::fs::write(dir.join("test_batch.bin"), b"").unwrap();
    expect_dataset_err(
        load(dir, DatasetKind::Cifar10, Split::Test, None),
        "test_batch.bin",
    );
    // Train needs all five batches even if a limit would stop early.
    std::fs::write(dir.join("data_batch_1.bin"), &rec).unwrap();
    let msg = expect_dataset_err(
        load(dir, DatasetKind::Cifar10, Split::Train, Some(1)),
        "data_batch_2.bin",
    );
    assert!(msg.contains("missing"), "{msg}");
    std::fs::write(dir.join("test.bin"), cifar_record(&[20, 5], 0)).unwrap();
    expect_dataset_err(
        load(dir, DatasetKind::Cifar100, Split::Test, None),
        "test.bin",
    );
    std::fs::write(dir.join("test.bin"), cifar_record(&[2, 100], 0)).unwrap();
    expect_dataset_err(
        load(dir, DatasetKind::Cifar100, Split::Test, None),
        "test.bin",
    );
}

#[test]
fn missing_files_and_directories_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("nope");
    let msg = expect_dataset_err(load(&gone, DatasetKind::Cifar10, Split::Test, None), "nope");
    assert!(msg.contains("does not exist"), "{msg}");
    let msg = expect_dataset_err(
        load(tmp.path(), DatasetKind::FashionMnist, Split::Train, None),
        "train-labels-idx1-ubyte",
    );
    assert!(msg.contains("missing") && msg.contains(".gz"), "{msg}");
    std::fs::write(tmp.path().join("train-labels-idx1-ubyte"), idx_labels(&[1])).unwrap();
    expect_dataset_err(
        load(tmp.path(), DatasetKind::FashionMnist, Split::Train, None),
        "train-images-idx3-ubyte",
    );
}
