# The datalists of benchmarks/results/bundle_auto (S: the shared data folder, ../shared/data from the repository)
python -m monai_scrd.prepare --split-json $S/brain_tumor/splits/MedIAnomaly_BrainTumor_data.json --images-root $S/brain_tumor --absolute-paths --val-fraction 0.1 --output /tmp/exp/bt.json
python -m monai_scrd.prepare --train-normal $S/chest_xray/train/normal --test-normal $S/chest_xray/test/normal --test-abnormal $S/chest_xray/test/pneumonia --absolute-paths --output /tmp/exp/cx.json
# then: train_all.sh (training at 183de1b in /tmp/wt_train), fit_all.sh (fit + evaluation + scoring choice at df8b617 in
# /tmp/wt_final), fixed_check.sh (HEAD's fixed default on the seed-0 models); rd4ad_choice.sh (scoring choice of RD4AD)
