"""dense3d.eval: published evaluation protocols, computed the papers' way (see docs/eval.md).

* ``caption_metrics`` -- pycocoevalcap's BLEU / METEOR / ROUGE-L / CIDEr-D, one METEOR process
  per evaluation (:class:`~dense3d.eval.caption_metrics.CaptionScorer`), PTB tokenizer;
* ``scanrefer`` -- ScanRefer m@kIoU, Vote2Cap-DETR protocol;
* ``scan2cap`` -- Scan2Cap benchmark (Hungarian, precision / recall / F1, DCmAP, mAP);
* ``tod3cap`` -- TOD3Cap, ``compatible`` (its size-only IoU) and ``corrected`` modes;
* ``favd`` -- FAVDBench metrics, EntityScore, AudioScore;
* ``events`` -- dense event captioning (densevid_eval semantics, SODA_c);
* ``detection`` -- VOC-style 3D IoU AP and nuScenes centre-distance AP;
* ``formats`` -- reading and checking the JSON files; ``cli`` -- ``dense3d eval``.

Depends only on ``dense3d.structures`` / ``dense3d.ops`` and libraries, never on models.
"""
